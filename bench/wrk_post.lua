-- wrk script of the benchmark suite (bench/loadgen.py runs it; configuration comes from the environment).
--   BENCH_METHOD        GET or POST (POST: a JSON body with a unique email per request)
--   BENCH_TOKEN         bearer token for the Authorization header (empty: no header)
--   BENCH_PREFIX        unique prefix of the generated addresses (one per run, so runs never collide)
--   BENCH_MAX_REQUESTS  stop each thread after its share of this many answers (0: run for the duration)
--   BENCH_HIST          1: add the latency histogram to the report
-- When a thread has its share it prints "BENCH_THREAD_DONE" and stops; the driver then ends wrk with SIGINT.
-- done() prints one "BENCH_JSON {...}" line: requests, duration, latency percentiles (us), status codes.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("thread_id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  method = os.getenv("BENCH_METHOD") or "POST"
  prefix = os.getenv("BENCH_PREFIX") or "bench"
  local token = os.getenv("BENCH_TOKEN") or ""
  local max_requests = tonumber(os.getenv("BENCH_MAX_REQUESTS") or "0")
  local thread_count = tonumber(os.getenv("BENCH_THREADS") or "1")
  share = 0
  if max_requests > 0 then
    share = math.ceil(max_requests / thread_count)
  end
  headers = {}
  if token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
  if method == "POST" then
    headers["Content-Type"] = "application/json"
  end
  counter = 0
  answers = 0
  codes = {}
  finished = false
end

function request()
  counter = counter + 1
  local body = nil
  if method == "POST" then
    body = string.format('{"email": "%s-%d-%d@example.com", "full_name": "Bench User %d"}',
                         prefix, thread_id, counter, counter)
  end
  return wrk.format(method, wrk.path, headers, body)
end

function response(status, hdrs, body)
  local key = tostring(status)
  codes[key] = (codes[key] or 0) + 1
  answers = answers + 1
  if share > 0 and answers >= share and not finished then
    finished = true
    io.write("BENCH_THREAD_DONE\n")
    io.flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local all = {}
  for _, thread in ipairs(threads) do
    local thread_codes = thread:get("codes") or {}
    for code, count in pairs(thread_codes) do
      all[code] = (all[code] or 0) + count
    end
  end
  local parts = {}
  for code, count in pairs(all) do
    table.insert(parts, string.format('"%s": %d', code, count))
  end
  -- BENCH_HIST=1: the whole latency histogram too ([us, count] pairs), so runs can be pooled. wrk's
  -- latency(i) scans its histogram from the start each call: only for runs of a few thousand requests.
  local hist = {}
  if os.getenv("BENCH_HIST") == "1" then
    for i = 1, #latency do
      local value, count = latency(i)
      table.insert(hist, string.format("[%d, %d]", value, count))
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f,'
    .. ' "codes": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d},'
    .. ' "hist": [%s]}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    latency.mean, table.concat(parts, ", "), e.connect, e.read, e.write, e.status, e.timeout,
    table.concat(hist, ", ")))
  io.flush()
end
