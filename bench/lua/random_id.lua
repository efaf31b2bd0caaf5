-- One request per call, on a random existing investor id (1..BENCH_MAX_ID).
-- Environment: BENCH_METHOD, BENCH_PATH and BENCH_BODY (templates where {id} becomes the id,
-- {month} a month 1-12 and {kpi_id} an investor with KPIs), BENCH_TOKEN (optional bearer
-- token), BENCH_MAX_ID.
local method = os.getenv("BENCH_METHOD") or "GET"
local path_template = os.getenv("BENCH_PATH") or "/"
local body_template = os.getenv("BENCH_BODY")
local max_id = tonumber(os.getenv("BENCH_MAX_ID") or "1")
local token = os.getenv("BENCH_TOKEN")

local headers = {}
if token and token ~= "" then
  headers["Authorization"] = "Bearer " .. token
end
if body_template and body_template ~= "" then
  headers["Content-Type"] = "application/json"
end

math.randomseed(20240601)

local function fill(template, id, month)
  -- {kpi_id}: a multiple of 3, the investors the seed gave 24 months of KPIs.
  local kpi_id = 3 * math.random(1, math.max(1, math.floor(max_id / 3)))
  return (template:gsub("{kpi_id}", tostring(kpi_id)):gsub("{id}", tostring(id))
    :gsub("{month}", tostring(month)))
end

request = function()
  local id = math.random(1, max_id)
  local month = math.random(1, 12)
  local body = nil
  if body_template and body_template ~= "" then
    body = fill(body_template, id, month)
  end
  return wrk.format(method, fill(path_template, id, month), headers, body)
end

-- One machine-readable line for bench/run.py.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p95_us=%d p99_us=%d max_us=%d " ..
    "non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
