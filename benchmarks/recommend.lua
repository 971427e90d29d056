-- wrk script: POST /recommend bodies for distinct, Zipf-distributed or hot-set users, or the
-- lines of a bodies file (POST /search: benchmarks/search_http.py writes one).
--
-- Configured through the environment (read in every wrk thread):
--   BENCH_USERS_FILE  one user id a line (required)
--   BENCH_BODIES_FILE one JSON object a line: request bodies instead of users (default none)
--   BENCH_K_FIELD     the field a bodies-file request carries BENCH_K in (default k)
--   BENCH_MODE        distinct | zipf | hot            (default distinct)
--   BENCH_PATH        request path                      (default /recommend)
--   BENCH_K           k of every request                (default 10)
--   BENCH_OFFSET      first request number (distinct)   (default 0)
--   BENCH_ZIPF_S      Zipf exponent over user ranks     (default 1.0)
--   BENCH_HOT_USERS   size of the hot set (hot)         (default 64)
--   BENCH_MAX_REQUESTS requests per thread before it stops (default unlimited)
--   BENCH_SEED        random seed                       (default 1)
--   BENCH_CONTEXT     0: bodies without "context"       (default 1)
--   BENCH_OUT         file for done() to write the JSON summary to (required)
--
-- distinct: request n asks for user n mod U, hour (n div U) mod 24 and device (n div 24U) mod 4,
-- so no two of the first 96U requests share a cache key. With a bodies file of B lines, request
-- n sends line (n mod B) + 1 (zipf and hot modes pick lines as they pick users), with
-- "<BENCH_K_FIELD>": BENCH_K added: the warm-up runs' other k keeps their keys apart too.
-- Threads run at their own pace, so the numbers one run sent are not a range: "next" in the
-- summary is the highest number a thread would have sent next, where the next run starts.
-- Every response body is scanned for "latency_ms", "cache" and "degraded" so that the
-- server-side latency, the cache level and degradation are known per request.
--
-- Client latency is timed here, from request() to response() on a monotonic clock, not taken
-- from wrk's histogram: against BentoML servers wrk 4.1's histogram reported p90 54 ms and p99
-- 212 ms for one connection whose 3,000 requests took 4.0 s in all (exact p90 1.14 ms, p99 1.72
-- ms). The pairing is exact because load.py runs one wrk thread per connection.

local devices = {"unknown", "web", "mobile", "tv"}

-- A monotonic clock through LuaJIT's FFI: a thread stopped by BENCH_MAX_REQUESTS idles until
-- wrk's -d ends, so its req/s must come from the time it was actually sending.
local has_clock, ffi = pcall(require, "ffi")
if has_clock then
   has_clock = pcall(ffi.cdef, [[
      typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
      int clock_gettime(int clk_id, bench_timespec *tp);
   ]])
end

local function now_s()
   if not has_clock then return 0 end
   local t = ffi.new("bench_timespec")
   ffi.C.clock_gettime(1, t)  -- CLOCK_MONOTONIC
   return tonumber(t.tv_sec) + tonumber(t.tv_nsec) * 1e-9
end
local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("id", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

local function env(name, default)
   local value = os.getenv(name)
   if value == nil or value == "" then return default end
   return value
end

function init(args)
   users = {}
   for line in io.lines(env("BENCH_USERS_FILE", "")) do
      if line ~= "" then users[#users + 1] = line end
   end
   local bodies_file = env("BENCH_BODIES_FILE", "")
   if bodies_file ~= "" then
      bodies = {}
      for line in io.lines(bodies_file) do
         if line ~= "" then bodies[#bodies + 1] = line end
      end
   end
   k_field = env("BENCH_K_FIELD", "k")
   local pool = bodies or users
   mode = env("BENCH_MODE", "distinct")
   with_context = env("BENCH_CONTEXT", "1") ~= "0"
   path = env("BENCH_PATH", "/recommend")
   k = tonumber(env("BENCH_K", "10"))
   counter = tonumber(env("BENCH_OFFSET", "0")) + id
   stride = tonumber(env("BENCH_THREADS", "1"))
   max_requests = tonumber(env("BENCH_MAX_REQUESTS", "0"))
   hot = math.min(tonumber(env("BENCH_HOT_USERS", "64")), #pool)
   math.randomseed(tonumber(env("BENCH_SEED", "1")) * 7919 + id)
   if mode == "zipf" then
      local s = tonumber(env("BENCH_ZIPF_S", "1.0"))
      cdf = {}
      local total = 0.0
      for r = 1, #pool do
         total = total + r ^ (-s)
         cdf[r] = total
      end
      for r = 1, #pool do cdf[r] = cdf[r] / total end
   end
   headers = {["Content-Type"] = "application/json"}
   latencies = {}
   client = {}
   sent_at = nil
   levels = {}
   degraded = 0
   responses = 0
   hot_next = id
   first_sent = nil
   last_received = nil
   capped = false
end

local function zipf_rank()
   local u = math.random()
   local lo, hi = 1, #cdf
   while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
   end
   return lo
end

local function body_for(user, hour, device)
   if not with_context then
      return string.format('{"user_id":"%s","k":%d}', user, k)
   end
   return string.format('{"user_id":"%s","k":%d,"context":{"hour":%d,"device":"%s"}}',
                        user, k, hour, device)
end

local function line_body(index)
   -- '{"query":...}' -> '{"page_size":10,"query":...}': every line is a JSON object
   return string.format('{"%s":%d,%s', k_field, k, string.sub(bodies[index], 2))
end

local function next_line()
   if mode == "zipf" then return zipf_rank() end
   if mode == "hot" then
      local index = (hot_next % hot) + 1
      hot_next = hot_next + stride
      return index
   end
   local n = counter
   counter = counter + stride
   return (n % #bodies) + 1
end

function request()
   sent_at = now_s()
   if first_sent == nil then first_sent = sent_at end
   if bodies then
      return wrk.format("POST", path, headers, line_body(next_line()))
   end
   local user, hour, device
   if mode == "zipf" then
      user, hour, device = users[zipf_rank()], 12, "web"
   elseif mode == "hot" then
      user, hour, device = users[(hot_next % hot) + 1], 12, "web"
      hot_next = hot_next + stride
   else
      local n = counter
      counter = counter + stride
      local u = #users
      user = users[(n % u) + 1]
      hour = math.floor(n / u) % 24
      device = devices[(math.floor(n / (u * 24)) % 4) + 1]
   end
   return wrk.format("POST", path, headers, body_for(user, hour, device))
end

function response(status, headers, body)
   responses = responses + 1
   last_received = now_s()
   if sent_at then client[#client + 1] = (last_received - sent_at) * 1000 end
   if status == 200 then
      local ms = string.match(body, '"latency_ms":%s*([%d%.eE%-]+)')
      if ms then latencies[#latencies + 1] = tonumber(ms) end
      local level = string.match(body, '"cache":%s*"(%w+)"')
      if level then levels[level] = (levels[level] or 0) + 1 end
      if string.find(body, '"degraded":%s*true') then degraded = degraded + 1 end
   end
   if max_requests > 0 and responses >= max_requests then
      capped = true
      wrk.thread:stop()
   end
end

local function json_list(values)
   local parts = {}
   for i = 1, #values do parts[i] = string.format("%.3f", values[i]) end
   return "[" .. table.concat(parts, ",") .. "]"
end

function done(summary, latency, requests)
   local server = {}
   local client_ms = {}
   local cache = {}
   local active_s = 0
   local any_capped = false
   local next_n = 0
   for _, thread in ipairs(threads) do
      local first, last = thread:get("first_sent"), thread:get("last_received")
      if first and last then active_s = math.max(active_s, last - first) end
      any_capped = any_capped or thread:get("capped")
      next_n = math.max(next_n, thread:get("counter") or 0)
      degraded_total = (degraded_total or 0) + (thread:get("degraded") or 0)
      local lat = thread:get("latencies") or {}
      for i = 1, #lat do server[#server + 1] = lat[i] end
      local mine = thread:get("client") or {}
      for i = 1, #mine do client_ms[#client_ms + 1] = mine[i] end
      local lv = thread:get("levels") or {}
      for name, count in pairs(lv) do cache[name] = (cache[name] or 0) + count end
   end
   local cache_parts = {}
   for name, count in pairs(cache) do
      cache_parts[#cache_parts + 1] = string.format('"%s":%d', name, count)
   end
   local pct = {}
   for _, p in ipairs({50, 75, 90, 95, 99, 99.9}) do
      pct[#pct + 1] = string.format('"%s":%.1f', tostring(p), latency:percentile(p))
   end
   local e = summary.errors
   local out = io.open(os.getenv("BENCH_OUT"), "w")
   out:write(string.format(
      '{"duration_us":%d,"active_s":%.6f,"capped":%s,"degraded":%d,"requests":%d,"next":%d,' ..
      '"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%.1f,"max":%.1f,"mean":%.1f,"stdev":%.1f,"percentiles":{%s}},' ..
      '"cache_levels":{%s},"server_latency_ms":%s,"client_latency_ms":%s}\n',
      summary.duration, active_s, tostring(any_capped), degraded_total or 0, summary.requests,
      next_n,
      summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.max, latency.mean, latency.stdev, table.concat(pct, ","),
      table.concat(cache_parts, ","), json_list(server), json_list(client_ms)))
   out:close()
end
