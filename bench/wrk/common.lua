-- Shared by the bench scripts: request headers, reading bodies, and a `done` hook that prints
-- the run's figures as one JSON line (prefix WRK_JSON) for bench/bench.py to parse.
-- Settings come from the environment, read when each Lua state loads the script:
--   WRK_BODIES   file with one request body per line
--   WRK_API_KEY  bearer key (default sk-bench)
--   WRK_RUN      a tag making unique bodies unique across runs (unique.lua)

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("WRK_API_KEY") or "sk-bench")

function read_bodies()
  local path = os.getenv("WRK_BODIES")
  assert(path, "WRK_BODIES is not set")
  local bodies = {}
  for line in io.lines(path) do
    if #line > 0 then
      bodies[#bodies + 1] = line
    end
  end
  assert(#bodies > 0, "no bodies in " .. path)
  return bodies
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.max, latency.stdev,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
