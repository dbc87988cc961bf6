-- One POST body (the first line of WRK_BODIES) sent on every request: wrk's static fast path.
dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "common.lua")

wrk.body = read_bodies()[1]
