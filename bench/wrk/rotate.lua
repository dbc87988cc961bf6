-- Every body of WRK_BODIES in turn, so each request asks for another stored answer (many keys).
-- Requests are formatted once per thread; threads start at different offsets.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

local requests_ = {}
local i = 0

function init(args)
  for k, body in ipairs(read_bodies()) do
    requests_[k] = wrk.format(nil, nil, nil, body)
  end
  i = ((id or 0) * 7919) % #requests_
end

function request()
  i = i % #requests_ + 1
  return requests_[i]
end
