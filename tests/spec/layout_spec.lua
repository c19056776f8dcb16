-- The map is true: every file of host/, bindings/, lua/, scripts/ and tests/ is
-- named in its folder's README (a table row "| `file` | what it holds |"),
-- and every file a README's table names exists. Files are the ones git
-- tracks, so build trees and scratch files do not count.

local function tracked(dir)
  local p = assert(io.popen("git ls-files -- " .. dir))
  local files = {}
  for line in p:lines() do files[#files + 1] = line end
  p:close()
  return files
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local FILE_EXT = {c = true, h = true, lua = true, md = true, cmake = true, sh = true, py = true, js = true,
  supp = true, svg = true}
-- templates (.in), the man page (.1), data (.txt) and names without an extension
FILE_EXT["in"], FILE_EXT["1"], FILE_EXT.txt = true, true, true
local FILE_NAMES = {Makefile = true, postinst = true, prerm = true}

-- The paths in the first column of the README's table rows: a name with a
-- file's extension, or a folder's (ending in "/"); module names such as
-- `tulua.fs` in other tables are not paths.
local function table_entries(text)
  local names = {}
  for line in text:gmatch("[^\n]+") do
    local name = line:match("^|%s*`([^`]+)`%s*|")
    if name and (name:sub(-1) == "/" or FILE_EXT[name:match("%.(%w+)$")]
                 or FILE_NAMES[name:match("[^/]+$")]) then
      names[name] = true
    end
  end
  return names
end

-- Which files each README must list, as paths relative to its folder.
local folders = {
  {dir = "host", wants = function(rel) return not rel:find("/") end},
  {dir = "bindings", wants = function(rel) return not rel:find("/") end},
  {dir = "lua", wants = function() return true end},
  {dir = "scripts", wants = function() return true end},
  {
    dir = "tests",
    -- the specs, C tests, fuzz targets and tools; fixtures, the fuzz corpora
    -- and tests/bench (which has a README of its own) are listed as folders
    wants = function(rel)
      return not rel:find("^spec/fixtures/") and not rel:find("^fuzz/corpus[%w_]*/")
        and not rel:find("^bench/")
    end,
  },
}

describe("the map", function()
  assert.is_true(#tracked("host") > 0, "git ls-files finds no files: not run from a checkout?")
  for _, folder in ipairs(folders) do
    local readme = folder.dir .. "/README.md"
    describe(readme, function()
      local entries = table_entries(read(readme))

      it("names every file of its folder", function()
        local missing = {}
        for _, path in ipairs(tracked(folder.dir)) do
          local rel = path:sub(#folder.dir + 2)
          if rel ~= "README.md" and folder.wants(rel) and not entries[rel] then
            missing[#missing + 1] = rel
          end
        end
        assert.are.same({}, missing)
      end)

      it("names no file that is not there", function()
        local gone = {}
        for name in pairs(entries) do
          local f = io.open(folder.dir .. "/" .. name:gsub("/$", ""), "rb")
          if f then f:close() else gone[#gone + 1] = name end
        end
        table.sort(gone)
        assert.are.same({}, gone)
      end)
    end)
  end
end)
