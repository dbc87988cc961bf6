-- A body never sent before on every request (a cache MISS): the first line of WRK_BODIES with
-- its __N__ replaced by WRK_RUN, the thread number and a counter.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

local prefix, suffix
local tag
local n = 0

function init(args)
  local template = read_bodies()[1]
  prefix, suffix = template:match("^(.*)__N__(.*)$")
  assert(prefix, "the body template has no __N__")
  tag = (os.getenv("WRK_RUN") or "run") .. "-" .. tostring(id or 0) .. "-"
end

function request()
  n = n + 1
  return wrk.format(nil, nil, nil, prefix .. tag .. n .. suffix)
end
