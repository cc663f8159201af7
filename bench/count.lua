-- wrk script for bench/allocs.sh: sends exactly BENCH_LIMIT requests, then stops.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = os.getenv("BENCH_BODY")
local limit = tonumber(os.getenv("BENCH_LIMIT") or "10000")
local sent = 0

request = function()
  sent = sent + 1
  return wrk.format()
end

response = function()
  if sent >= limit then
    wrk.thread:stop()
  end
end

done = function(summary)
  io.write(string.format("SENT %d\n", summary.requests))
end
