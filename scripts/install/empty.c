/* empty.c: libtulua.so is libtulua.a whole; CMake wants a source of its own. */
typedef int tulua__empty_unit; /* ISO C wants one declaration */
