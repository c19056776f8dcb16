--- tulua.repl: how the interactive REPL shows results and completes words.
-- Two pure functions for host/repl.c: show() turns one value into readable,
-- Lua-like text (Python's repr, Node's util.inspect) and complete() lists
-- the completions of the dotted or colon path at the cursor. Neither calls a
-- metamethod other than __tostring (under pcall), nor raises on any value:
-- tables are read with next and rawget, metatables with debug.getmetatable,
-- so a proxy table whose __index, __pairs or __len raise is safe to show.
local M = {}

local type, next, rawget, pcall, tostring, require = type, next, rawget, pcall, tostring, require
local format, find, match, sub, byte, rep, gsub =
  string.format, string.find, string.match, string.sub, string.byte, string.rep, string.gsub
local concat, sort, pack = table.concat, table.sort, table.pack
local math_type, utf8_len = math.type, utf8.len
local getmetatable, getinfo = debug.getmetatable, debug.getinfo
local coroutine_status = coroutine.status
local arg_error, type_error = require("tulua._args").arg_error, require("tulua._args").type_error

local MAX_CHAIN = 10 -- __index tables followed at most, one after the other
local MAX_COMPLETIONS = 200
local PACKED_WIDTH = 16 -- sequence items up to this wide share lines
local DEFAULTS = {width = 80, depth = 4, max_items = 100, max_string = 200}

local KEYWORDS = {"and", "break", "do", "else", "elseif", "end", "false", "for", "function", "goto", "if",
  "in", "local", "nil", "not", "or", "repeat", "return", "then", "true", "until", "while"}
local is_keyword = {}
for _, k in next, KEYWORDS do is_keyword[k] = true end

-- Whether s may follow a dot in Lua source: an ASCII identifier, no keyword.
local function is_name(s)
  return type(s) == "string" and find(s, "^[A-Za-z_][A-Za-z0-9_]*$") ~= nil and not is_keyword[s]
end

-- The table of Task methods, or nil when the tulua module is not there.
local function task_methods()
  local ok, tulua = pcall(require, "tulua")
  local Task = ok and type(tulua) == "table" and rawget(tulua, "Task")
  if type(Task) == "table" and type(rawget(Task, "status")) == "function" then return Task end
  return nil
end

-- Returns Task if co is a task thread, else nil.
local function task_of(co)
  local Task = task_methods()
  if Task and pcall(Task.status, co) then return Task end
  return nil
end

-- ---- show: scalars ----

local ESCAPES = {["\a"] = "\\a", ["\b"] = "\\b", ["\f"] = "\\f", ["\n"] = "\\n", ["\r"] = "\\r",
  ["\t"] = "\\t", ["\v"] = "\\v", ['"'] = '\\"', ["\\"] = "\\\\"}

-- s between double quotes, escaped as Lua reads it back: \n, \t... for the
-- usual control characters, \ddd for the others and, unless s is valid
-- UTF-8, for the bytes above 127; other bytes as they are.
local function quote(s)
  local special = utf8_len(s) and '([%c"\\])()' or '([%c"\\\128-\255])()'
  local body = gsub(s, special, function(c, after)
    local e = ESCAPES[c]
    if e then return e end
    return format(find(s, "^%d", after) and "\\%03d" or "\\%d", byte(c))
  end)
  return '"' .. body .. '"'
end

-- A string quoted, cut after max bytes (not inside a UTF-8 sequence).
local function show_string(s, max)
  local n = #s
  if n <= max then return quote(s) end
  local cut = max
  while cut > 0 and cut > max - 3 and (byte(s, cut + 1) & 0xC0) == 0x80 do cut = cut - 1 end
  return format("%s... (%d bytes)", quote(sub(s, 1, cut)), n)
end

-- A number as tostring shows it, without consulting a number metatable.
local function show_number(x)
  if math_type(x) == "integer" then return format("%d", x) end
  local s = format("%.14g", x)
  if not find(s, "[^-0-9]") then s = s .. ".0" end -- looks like an integer
  return s
end

local function show_function(f)
  local info = getinfo(f, "S")
  if info.what == "C" then return "function: builtin" end
  if info.what == "main" then return "function: " .. info.short_src .. " (main chunk)" end
  return format("function: %s:%d", info.short_src, info.linedefined)
end

local function show_thread(co)
  local Task = task_of(co)
  if Task then
    local ok1, name = pcall(Task.get_name, co)
    local _, status = pcall(Task.status, co)
    return format("<Task '%s' %s>", ok1 and tostring(name) or "?", status)
  end
  return format("thread: %p (%s)", co, coroutine_status(co))
end

-- tostring(v) under pcall (it runs v's __tostring); when that raises,
-- "<name: 0x...: __tostring failed: message>".
local function show_tostring(v, mt)
  local ok, s = pcall(tostring, v)
  if ok then return s end
  local name = mt and rawget(mt, "__name")
  if type(name) ~= "string" then name = type(v) end
  local msg = type(s) == "string" and s or "(error object is a " .. type(s) .. " value)"
  return format("<%s: %p: __tostring failed: %s>", name, v, msg)
end

local function show_future(f, mt)
  local status = rawget(mt, "status")
  local ok, s = false, nil
  if type(status) == "function" then ok, s = pcall(status, f) end
  return format("<Future %s>", ok and type(s) == "string" and s or "?")
end

-- ---- show: tables ----

-- How a table shows without its content: "tostring" (a __tostring), "future"
-- (an asyncio.Future), or nil for a table whose entries are listed.
local function leaf_kind(t)
  local mt = getmetatable(t)
  if mt == nil then return nil, nil end
  if rawget(mt, "__tostring") ~= nil then return "tostring", mt end
  if rawget(mt, "__name") == "asyncio.Future" then return "future", mt end
  return nil, mt
end

-- Sorting keys: numbers ascending, strings, then the others by type name and
-- raw address (booleans by value): a total order, whatever the keys.
local RANK = {number = 1, string = 2}

local function raw_text(v)
  if type(v) == "boolean" then return v and "true" or "false" end
  return format("%p", v)
end

local function key_less(a, b)
  local ta, tb = type(a), type(b)
  local ra, rb = RANK[ta] or 3, RANK[tb] or 3
  if ra ~= rb then return ra < rb end
  if ra < 3 then return a < b end
  if ta ~= tb then return ta < tb end
  return raw_text(a) < raw_text(b)
end

-- The entries of t to show, computed once: {keys = , vals = , seq = the
-- leading entries shown without their key, more = entries not shown}.
local function entries_of(st, t)
  local e = st.entries[t]
  if e then return e end
  local seq = 0
  while rawget(t, seq + 1) ~= nil do seq = seq + 1 end
  local rest, total = {}, seq
  for k in next, t do
    if not (math_type(k) == "integer" and k >= 1 and k <= seq) then
      total = total + 1
      rest[#rest + 1] = k
    end
  end
  local max = st.max_items
  e = {keys = {}, vals = {}, seq = seq < max and seq or max}
  for i = 1, e.seq do
    e.keys[i], e.vals[i] = i, rawget(t, i)
  end
  if e.seq < max and #rest > 0 then
    sort(rest, key_less)
    for i = 1, #rest do
      local n = #e.keys
      if n >= max then break end
      e.keys[n + 1], e.vals[n + 1] = rest[i], rawget(t, rest[i])
    end
  end
  e.more = total - #e.keys
  st.entries[t] = e
  return e
end

-- First pass: finds the tables reached more than once (through a cycle or
-- another path), which get a label. It walks the tables in the order
-- render() does, so that both agree on which occurrence is expanded.
local function scan(st, v, level)
  if type(v) ~= "table" or leaf_kind(v) then return end
  if st.seen[v] then
    st.shared[v] = true
    return
  end
  if level >= st.depth then return end
  st.seen[v] = true
  local e = entries_of(st, v)
  for i = 1, #e.keys do
    scan(st, e.keys[i], level + 1)
    scan(st, e.vals[i], level + 1)
  end
end

local render

local function width_of(s)
  return utf8_len(s) or #s
end

-- Lays items out after open: on one line when it fits in st.width from
-- column col, else one item a line, indented two spaces a level; the first
-- nseq items (the sequence part) then share lines when each is short.
local function layout(st, open, items, nseq, close, level, col)
  local line = concat(items, ", ")
  if not find(line, "\n", 1, true) and col + width_of(open .. line .. close) <= st.width then
    return open .. line .. close
  end
  local indent = rep("  ", level + 1)
  local lines, i = {}, 1
  for j = 1, nseq do
    if find(items[j], "\n", 1, true) or width_of(items[j]) > PACKED_WIDTH then
      nseq = 0 -- one a line, all of them
      break
    end
  end
  while i <= nseq do
    local packed, w = items[i], #indent + width_of(items[i]) + 1 -- and its comma
    i = i + 1
    while i <= nseq and w + width_of(items[i]) + 2 <= st.width do
      packed = packed .. ", " .. items[i]
      w = w + width_of(items[i]) + 2
      i = i + 1
    end
    lines[#lines + 1] = packed
  end
  for j = i, #items do lines[#lines + 1] = items[j] end
  return open .. "\n" .. indent .. concat(lines, ",\n" .. indent) .. "\n" .. rep("  ", level) .. close
end

local function render_table(st, t, level, col)
  local kind, mt = leaf_kind(t)
  if kind == "tostring" then return show_tostring(t, mt) end
  if kind == "future" then return show_future(t, mt) end
  if st.shown[t] then return format(st.open[t] and "<cycle %d>" or "<ref %d>", st.labels[t]) end
  local open, close = "{", "}"
  local name = mt and rawget(mt, "__name")
  if type(name) == "string" then open, close = "<" .. name .. ": {", "}>" end
  if level >= st.depth then return open .. (next(t) == nil and "" or "...") .. close end
  st.shown[t] = true
  if st.shared[t] then
    st.nlabels = st.nlabels + 1
    st.labels[t] = st.nlabels
    open = format("<%d>", st.nlabels) .. open
  end
  st.open[t] = true
  local e, items = entries_of(st, t), {}
  local inner = (level + 1) * 2 -- where the items start when one a line
  for i = 1, #e.keys do
    local v = e.vals[i]
    if i <= e.seq then
      items[i] = render(st, v, level + 1, inner)
    else
      local k = e.keys[i]
      k = is_name(k) and k or "[" .. render(st, k, level + 1, inner + 1) .. "]"
      items[i] = k .. " = " .. render(st, v, level + 1, inner + #k + 3)
    end
  end
  if e.more > 0 then items[#items + 1] = format("... (%d more)", e.more) end
  st.open[t] = nil
  return layout(st, open, items, e.seq, close, level, col)
end

-- v as text; level counts the tables around it, col is where it starts.
render = function(st, v, level, col)
  local tv = type(v)
  if tv == "string" then return show_string(v, st.max_string) end
  if tv == "number" then return show_number(v) end
  if tv == "table" then return render_table(st, v, level, col) end
  if tv == "function" then return show_function(v) end
  if tv == "thread" then return show_thread(v) end
  if tv == "userdata" then return show_tostring(v, getmetatable(v)) end
  if tv == "boolean" then return v and "true" or "false" end
  return "nil"
end

local function check_opts(opts)
  if opts == nil then return DEFAULTS end
  if type(opts) ~= "table" then
    type_error(2, "show", "table", opts, 3)
  end
  local o = {}
  for name, default in next, DEFAULTS do
    local x = rawget(opts, name)
    if x == nil then
      x = default
    elseif math_type(x) ~= "integer" or x < 0 then
      arg_error(2, "show", "field '" .. name .. "' must be a non-negative integer", 3)
    end
    o[name] = x
  end
  return o
end

--- Returns value as readable text, in Lua's syntax where there is one.
-- nil, booleans and numbers as tostring shows them (`3`, `1.0`); strings in
-- double quotes with Lua's escapes (`"a\"b\n"`), cut after max_string bytes
-- as `"abc"... (1000 bytes)`; tables as `{1, 2, x = 3, ["a b"] = 4}`: the
-- sequence first, then the other keys sorted (numbers, strings, the rest by
-- type), names as bare keys. A table goes over several lines, indented two
-- spaces a level, when its one-line form from its column would pass width.
-- Tables deeper than depth show as `{...}`; after max_items entries comes
-- `... (N more)`. A table reached again gets a label where it is first shown,
-- `<1>{...}`, and shows as `<cycle 1>` inside itself, `<ref 1>` elsewhere. A
-- table with a __tostring shows its tostring, one with a string __name as
-- `<name: {...}>`; an asyncio Future as `<Future pending>` (its status()).
-- Functions: `function: builtin` (C) or `function: file:line` (where it is
-- defined). A Task: `<Task 'Task-3' waiting>`; another thread:
-- `thread: 0x... (suspended)`; userdata: its tostring.
-- @param value any value
-- @param opts optional table: width (80), depth (4), max_items (100),
--   max_string (200), non-negative integers
-- @return string
-- @raise only for a bad opts: no value makes it raise; a __tostring that
--   raises shows as `<name: 0x...: __tostring failed: message>`
function M.show(value, opts)
  local o = check_opts(opts)
  local st = {width = o.width, depth = o.depth, max_items = o.max_items, max_string = o.max_string,
    entries = {}, seen = {}, shared = {}, shown = {}, open = {}, labels = {}, nlabels = 0}
  local ok, s = pcall(function()
    scan(st, value, 0)
    return render(st, value, 0, 0)
  end)
  if ok then return s end
  return format("<%s: %p: show failed: %s>", type(value), value, type(s) == "string" and s or type(s))
end

--- Returns the values shown by show() and joined with tabs, nil included:
-- what the REPL prints for `return a, b, c`. No value gives "".
-- @return string
function M.show_all(...)
  local args = pack(...)
  local parts = {}
  for i = 1, args.n do parts[i] = M.show(args[i]) end
  return concat(parts, "\t")
end

-- ---- complete ----

-- The table v offers beyond its own keys: the Task methods for a task, else
-- its metatable's __index when that is a table (the string library for a
-- string); nil otherwise (an __index function is never called).
local function index_of(v)
  if type(v) == "thread" then
    local Task = task_of(v)
    if Task then return Task end
  end
  local mt = getmetatable(v)
  local idx = mt and rawget(mt, "__index")
  if type(idx) == "table" then return idx end
  return nil
end

-- v[name] without calling anything: raw, then through __index tables.
local function lookup(v, name)
  for _ = 0, MAX_CHAIN do
    if type(v) == "table" then
      local x = rawget(v, name)
      if x ~= nil then return x end
    end
    v = index_of(v)
    if v == nil then return nil end
  end
  return nil
end

-- Adds to found the keys v offers that start with prefix, with the value
-- indexing finds first for each (own keys shadow __index ones).
local function collect(v, prefix, found)
  local hide_meta = sub(prefix, 1, 1) ~= "_" -- __index, __gc... only after "_"
  for _ = 0, MAX_CHAIN do
    if type(v) == "table" then
      for k, x in next, v do
        if found[k] == nil and is_name(k) and sub(k, 1, #prefix) == prefix and
            not (hide_meta and sub(k, 1, 2) == "__") then
          found[k] = x
        end
      end
    end
    v = index_of(v)
    if v == nil then return end
  end
end

--- Returns the completions of text, the word at the REPL's cursor.
-- text is a path of names joined by dots, the last one possibly after a
-- colon and incomplete (`pri`, `string.fo`, `a.b.c`, `t:jo`). The path is
-- resolved in env with raw access, then through __index tables (at most 10
-- one after the other); a Task offers the Task methods, a string the string
-- library. Candidates are the keys that are names (not keywords) starting
-- with the last part, each given as the whole text (`string.format`,
-- `t:join`); after a colon only functions; for a word without dot or colon
-- also the keywords. Keys starting with "__" are offered only when the last
-- part starts with "_". What precedes the path in text (text is the word
-- libedit cut at its break characters, which may be "x+string.fo") is kept
-- in front of each completion. Nothing is called and nothing raises.
-- @param text string
-- @param env table to resolve the path in (default _G)
-- @return sorted array of at most 200 strings, empty when text is no path
--   or does not resolve
-- @raise for a text that is not a string or an env that is not a table
function M.complete(text, env)
  if type(text) ~= "string" then
    type_error(1, "complete", "string", text)
  end
  if env == nil then env = _G end
  if type(env) ~= "table" then
    type_error(2, "complete", "table", env)
  end
  local lead, path = match(text, "^(.-)([A-Za-z0-9_.:]*)$") -- lead: "x + " in "x + string.fo"
  local head, sep, last = match(path, "^(.*)([.:])([A-Za-z0-9_]*)$")
  if head == nil then head, sep, last = nil, "", path end
  if find(last, "^[0-9]") then return {} end
  local v, pos = env, 1
  while head ~= nil do
    local name, after = match(head, "^([A-Za-z_][A-Za-z0-9_]*)()", pos)
    if not is_name(name) then return {} end
    v = lookup(v, name)
    if v == nil then return {} end
    if after > #head then break end
    if sub(head, after, after) ~= "." then return {} end
    pos = after + 1
  end
  local found = {}
  collect(v, last, found)
  local words, base = {}, lead .. (head and head .. sep or "")
  for k, x in next, found do
    if sep ~= ":" or type(x) == "function" then words[#words + 1] = base .. k end
  end
  if head == nil then
    for _, k in next, KEYWORDS do
      if sub(k, 1, #last) == last then words[#words + 1] = lead .. k end
    end
  end
  sort(words)
  for i = #words, MAX_COMPLETIONS + 1, -1 do words[i] = nil end
  return words
end

return M
