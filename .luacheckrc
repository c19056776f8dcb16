std = "lua54"
max_line_length = 120
self = false -- methods need not use self (Loop:time, Handle:when)
files["tests/spec"] = {std = "+busted"}
exclude_files = {"build*/"}
