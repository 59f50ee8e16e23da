"""The service's entry module: `bentoml serve emoflow.bento:EmotionService` imports it.

BentoML fixes a service's configuration (its worker processes, access log and tracing) when
the class is made, so this module of the wiring layer reads the settings of the environment
at import and builds the service with them (`serving.service.build_service`).
"""

from ml.config import Settings
from serving.service import build_service

EmotionService = build_service(Settings())
