-- wrk script for scripts/bench-serve-*.sh: POSTs one JSON message to volley serve's
-- /api/v1/messages per request, with RCPTS recipients (distinct addresses in every request,
-- so nothing is merged; at DOMAINS domains if given, else one) and a 1,000-octet raw message
-- as content. Prints a JSON summary.
local rcpts = tonumber(os.getenv("RCPTS") or "1")
local key = os.getenv("API_KEY") or ""
-- With REQUESTS, each thread stops once that many of its requests are answered.
local limit = tonumber(os.getenv("REQUESTS") or "")
local domains = tonumber(os.getenv("DOMAINS") or "1")
local counter = 0
local answered = 0

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

local content = "From: app@example.com\\r\\nTo: user@example.net\\r\\nSubject: bench\\r\\n\\r\\n"
    .. string.rep("x", 76) .. "\\r\\n"
for _ = 1, 11 do
    content = content .. string.rep("y", 76) .. "\\r\\n"
end

request = function()
    counter = counter + 1
    local list = {}
    for i = 1, rcpts do
        list[i] = string.format('{"email":"u%d-%d@d%d.example.net"}', counter, i, (counter + i) % domains)
    end
    local body = string.format('{"envelope_sender":"app@example.com","recipients":[%s],"content":"%s"}',
        table.concat(list, ","), content)
    return wrk.format(nil, "/api/v1/messages", nil, body)
end

response = function(status, headers, body)
    answered = answered + 1
    if limit and answered >= limit then
        wrk.thread:stop()
    end
end

done = function(summary, latency, requests)
    io.write(string.format(
        '{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}\n',
        summary.requests, summary.duration, summary.errors.status,
        summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
        latency:percentile(50), latency:percentile(99)))
end
