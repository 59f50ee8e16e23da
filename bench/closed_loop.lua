-- wrk script of bench/serving_speed.py: POST each prepared multipart body in turn, then print
-- what was measured as one JSON line.
--   wrk -t1 -cN -dS -s bench/closed_loop.lua URL -- BOUNDARY BODY_FILE...
-- Each connection sends its next request as soon as the previous one is answered (closed loop).

local bodies, headers, next_body = {}, {}, 0

function init(args)
  headers["Content-Type"] = "multipart/form-data; boundary=" .. args[1]
  for i = 2, #args do
    local file = assert(io.open(args[i], "rb"))
    bodies[#bodies + 1] = file:read("*a")
    file:close()
  end
end

function request()
  next_body = next_body % #bodies + 1
  return wrk.format("POST", nil, headers, bodies[next_body])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, '
      .. '"mean_us": %.1f, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
