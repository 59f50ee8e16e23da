// The emoflow web page: a photo or webcam frames go to POST /predict; faces come back as
// boxes in the pixels of the (EXIF-upright) image, drawn here over the picture.
"use strict";

// Relative to this page (served at <service>/ui/), so it works behind any host, port or prefix.
const PREDICT_URL = new URL("../predict", document.baseURI);
const READY_URL = new URL("../ready", document.baseURI);

const MAX_PHOTO_HEIGHT = 0.7; // of the window height
const WEBCAM_MAX_SIDE = 640; // frames are sent at most this large
const JPEG_QUALITY = 0.85;
const RETRY_MS = 2000; // after a failed frame
const VERSION_POLL_MS = 30000;

const $ = (id) => document.getElementById(id);
const ui = {
  version: $("model-version"),
  fileInput: $("file-input"),
  dropZone: $("drop-zone"),
  photoStatus: $("photo-status"),
  photoError: $("photo-error"),
  photoResult: $("photo-result"),
  photoCanvas: $("photo-canvas"),
  photoCaption: $("photo-caption"),
  photoFaces: $("photo-faces"),
  webcamStart: $("webcam-start"),
  webcamStop: $("webcam-stop"),
  webcamStatus: $("webcam-status"),
  webcamError: $("webcam-error"),
  webcamResult: $("webcam-result"),
  video: $("webcam-video"),
  overlay: $("webcam-overlay"),
  webcamFaces: $("webcam-faces"),
};

// ------------------------------------------------------------------ talking to the service

class Problem extends Error {
  /** Something to tell the user: a short title and a plain detail. */
  constructor(title, detail, status = null) {
    super(`${title}: ${detail}`);
    this.title = title;
    this.detail = detail;
    this.status = status;
  }
}

function sentence(text) {
  return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
}

async function predict(blob, filename) {
  const form = new FormData();
  form.append("image", blob, filename);
  let response;
  try {
    response = await fetch(PREDICT_URL, { method: "POST", body: form });
  } catch (err) {
    throw new Problem("Could not reach the service", `${err.message}. Is it running?`);
  }
  showVersion(response.headers.get("X-Model-Version"));
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  if (!response.ok) {
    if (body && typeof body.detail === "string") {
      showVersion(body.model_version);
      throw new Problem(sentence(body.error) || `Error ${response.status}`, body.detail, response.status);
    }
    const detail = text.trim().slice(0, 300) || "no details given";
    throw new Problem(`The service answered ${response.status} ${response.statusText}`.trim(), detail, response.status);
  }
  if (!body || !Array.isArray(body.faces) || !body.width || !body.height) {
    throw new Problem("Unexpected answer", "the service's answer is not the JSON this page expects");
  }
  showVersion(body.model_version);
  return body;
}

function showVersion(version) {
  if (version === undefined || version === null || version === "" || version === "None") {
    return;
  }
  ui.version.textContent = String(version);
  ui.version.dataset.version = String(version);
  ui.version.removeAttribute("title");
}

async function refreshVersion() {
  try {
    const response = await fetch(READY_URL, { cache: "no-store" });
    const body = await response.json();
    if (response.ok) {
      showVersion(body.version);
    } else {
      ui.version.textContent = "none loaded";
      ui.version.dataset.version = "";
      ui.version.title = body.detail || "";
    }
  } catch {
    ui.version.textContent = "unknown (service not reachable)";
    ui.version.dataset.version = "";
  }
}

// ------------------------------------------------------------------ a photo

const photo = { token: 0, bitmap: null, answer: null };

function drawPhoto() {
  const { bitmap, answer } = photo;
  if (!bitmap || !answer) return;
  const canvas = ui.photoCanvas;
  const aspect = bitmap.width / bitmap.height;
  const room = canvas.parentElement.clientWidth || bitmap.width;
  const cssWidth = Math.max(1, Math.floor(Math.min(room, window.innerHeight * MAX_PHOTO_HEIGHT * aspect)));
  const unit = fitCanvas(canvas, cssWidth, Math.max(1, Math.round(cssWidth / aspect)));
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  drawFaces(ctx, answer, unit);
}

function clearPhoto() {
  photo.bitmap?.close();
  photo.bitmap = null;
  photo.answer = null;
  const canvas = ui.photoCanvas;
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  ui.photoFaces.replaceChildren();
  ui.photoCaption.textContent = "";
  ui.photoResult.hidden = true;
}

async function handleFile(file) {
  if (!file) return;
  const token = ++photo.token;
  const name = file.name || "the pasted image";
  clearProblem(ui.photoError);
  setStatus(ui.photoStatus, "busy", `Looking for faces in ${name}…`);
  // Upright as the service sees it: the service applies the EXIF orientation too.
  const bitmapPromise = createImageBitmap(file, { imageOrientation: "from-image" }).catch(() => null);
  let answer;
  try {
    answer = await predict(file, file.name || "pasted.png");
  } catch (problem) {
    bitmapPromise.then((bitmap) => bitmap?.close());
    if (token !== photo.token) return;
    clearPhoto();
    showProblem(ui.photoError, problem);
    setStatus(ui.photoStatus, "error", `No result for ${name}.`);
    return;
  }
  const bitmap = await bitmapPromise;
  if (token !== photo.token) {
    bitmap?.close();
    return;
  }
  clearPhoto();
  photo.bitmap = bitmap;
  photo.answer = answer;
  ui.photoResult.hidden = false;
  const count = answer.faces.length;
  const found = count ? `${plural(count, "face")} found` : "No face found";
  ui.photoCaption.textContent = `${found} in ${name} (${answer.width} × ${answer.height} pixels).`;
  ui.photoCanvas.setAttribute(
    "aria-label",
    count ? `${name} with ${plural(count, "box")}: ${answer.faces.map((f) => f.emotion).join(", ")}` : name,
  );
  if (bitmap) {
    ui.photoCanvas.hidden = false;
    drawPhoto();
  } else {
    ui.photoCanvas.hidden = true;
    ui.photoCaption.textContent += " This browser cannot display the image itself.";
  }
  renderFaces(ui.photoFaces, answer);
  setStatus(ui.photoStatus, "done", `${found} · model version ${answer.model_version}.`);
}

function firstImage(files) {
  return Array.from(files || []).find((file) => file.type.startsWith("image/") || !file.type) || files?.[0];
}

ui.fileInput.addEventListener("change", () => {
  const file = ui.fileInput.files[0];
  ui.fileInput.value = ""; // choosing the same file again still counts as a change
  handleFile(file);
});

// Drop anywhere on the page; the drop zone lights up.
let dragDepth = 0;
document.addEventListener("dragenter", (event) => {
  if (!event.dataTransfer?.types.includes("Files")) return;
  dragDepth += 1;
  ui.dropZone.classList.add("dragging");
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (!dragDepth) ui.dropZone.classList.remove("dragging");
});
document.addEventListener("dragover", (event) => {
  if (event.dataTransfer?.types.includes("Files")) event.preventDefault();
});
document.addEventListener("drop", (event) => {
  if (!event.dataTransfer?.files.length) return;
  event.preventDefault();
  dragDepth = 0;
  ui.dropZone.classList.remove("dragging");
  handleFile(firstImage(event.dataTransfer.files));
});
document.addEventListener("paste", (event) => {
  const file = firstImage(event.clipboardData?.files);
  if (file) handleFile(file);
});

let resizeFrame = 0;
window.addEventListener("resize", () => {
  cancelAnimationFrame(resizeFrame);
  resizeFrame = requestAnimationFrame(drawPhoto);
});

// ------------------------------------------------------------------ the webcam

const cam = { stream: null, session: 0, frames: 0 };

function cameraProblem(err) {
  switch (err?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return new Problem(
        "Camera access was refused",
        "Allow the camera for this site in the browser's settings, then press “Use webcam” again.",
      );
    case "NotFoundError":
    case "OverconstrainedError":
      return new Problem("No camera found", "Connect a camera, or choose a photo instead.");
    case "NotReadableError":
    case "AbortError":
      return new Problem("The camera could not start", "Another application may be using it.");
    default:
      return new Problem("The camera could not start", `${err?.name || "Error"}: ${err?.message || err}`);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function startWebcam() {
  clearProblem(ui.webcamError);
  if (!navigator.mediaDevices?.getUserMedia) {
    showProblem(
      ui.webcamError,
      window.isSecureContext
        ? new Problem("No camera access", "This browser does not offer the camera to web pages.")
        : new Problem(
            "No camera access on this address",
            "Browsers allow the camera only on HTTPS pages or on localhost. Open the page that way, or choose a photo.",
          ),
    );
    return;
  }
  ui.webcamStart.disabled = true;
  setStatus(ui.webcamStatus, "asking", "Asking for the camera…");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: "user", width: { ideal: 640 }, height: { ideal: 480 } },
      audio: false,
    });
  } catch (err) {
    ui.webcamStart.disabled = false;
    setStatus(ui.webcamStatus, "off", "Webcam off.");
    showProblem(ui.webcamError, cameraProblem(err));
    return;
  }
  const session = ++cam.session;
  cam.stream = stream;
  cam.frames = 0;
  ui.webcamStatus.dataset.frames = "0";
  ui.webcamStatus.dataset.faces = "0";
  ui.video.srcObject = stream;
  ui.webcamResult.hidden = false;
  ui.webcamStop.disabled = false;
  for (const track of stream.getVideoTracks()) {
    track.addEventListener("ended", () => {
      if (session !== cam.session) return;
      stopWebcam();
      showProblem(ui.webcamError, new Problem("The camera stopped", "It was unplugged or turned off."));
    });
  }
  try {
    await ui.video.play();
  } catch (err) {
    if (session !== cam.session) return;
    stopWebcam();
    showProblem(ui.webcamError, cameraProblem(err));
    return;
  }
  setStatus(ui.webcamStatus, "live", "Live · waiting for the first answer…");
  ui.webcamStop.focus();
  runWebcam(session);
}

/** One frame at a time: grab, send, draw the answer, then the next frame. */
async function runWebcam(session) {
  const grab = document.createElement("canvas");
  const live = () => session === cam.session;
  while (live()) {
    const { videoWidth: width, videoHeight: height } = ui.video;
    if (!width || !height) {
      await sleep(100);
      continue;
    }
    const scale = Math.min(1, WEBCAM_MAX_SIDE / Math.max(width, height));
    grab.width = Math.round(width * scale);
    grab.height = Math.round(height * scale);
    grab.getContext("2d").drawImage(ui.video, 0, 0, grab.width, grab.height);
    const blob = await new Promise((resolve) => grab.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
    let answer;
    try {
      if (!blob) throw new Problem("No frame", "the browser could not encode the camera picture");
      answer = await predict(blob, "frame.jpg");
    } catch (problem) {
      if (!live()) return;
      showProblem(ui.webcamError, problem);
      setStatus(ui.webcamStatus, "retrying", `Live · the last frame failed; next try in ${RETRY_MS / 1000} s.`);
      await sleep(RETRY_MS);
      continue;
    }
    if (!live()) return;
    clearProblem(ui.webcamError);
    cam.frames += 1;
    drawOverlay(answer);
    renderFaces(ui.webcamFaces, answer);
    const count = answer.faces.length;
    ui.webcamStatus.dataset.faces = String(count);
    ui.webcamStatus.dataset.frames = String(cam.frames);
    setStatus(
      ui.webcamStatus,
      "live",
      `Live · ${plural(cam.frames, "frame")} answered · ${count ? plural(count, "face") : "no face"} in the latest.`,
    );
  }
}

function drawOverlay(answer) {
  const canvas = ui.overlay;
  const { width, height } = ui.video.getBoundingClientRect();
  if (!width || !height) return;
  const unit = fitCanvas(canvas, width, height);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  drawFaces(ctx, answer, unit);
}

function stopWebcam() {
  cam.session += 1; // ends the loop; an answer still on its way is dropped
  for (const track of cam.stream?.getTracks() || []) track.stop();
  cam.stream = null;
  ui.video.pause();
  ui.video.srcObject = null;
  const ctx = ui.overlay.getContext("2d");
  ctx.clearRect(0, 0, ui.overlay.width, ui.overlay.height);
  ui.webcamFaces.replaceChildren();
  ui.webcamResult.hidden = true;
  ui.webcamStop.disabled = true;
  ui.webcamStart.disabled = false;
  setStatus(ui.webcamStatus, "off", cam.frames ? `Webcam off after ${plural(cam.frames, "frame")}.` : "Webcam off.");
}

ui.webcamStart.addEventListener("click", startWebcam);
ui.webcamStop.addEventListener("click", () => {
  stopWebcam();
  ui.webcamStart.focus();
});

// ------------------------------------------------------------------ start

refreshVersion();
setInterval(() => {
  if (document.visibilityState === "visible") refreshVersion();
}, VERSION_POLL_MS);
