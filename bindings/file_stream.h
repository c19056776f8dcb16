/* file_stream.h: file streams (file_stream.c), the stream methods over
 * uv_fs for descriptors that cannot be polled; made by tty.c. */
#ifndef TULUA_FILE_STREAM_H
#define TULUA_FILE_STREAM_H

#include <stdio.h>

#include "common.h"

/* Creates the metatable of file streams ("tulua.file_stream"), with the
 * methods of stream.c's streams (read, read_exactly, read_line, lines,
 * read_all, write, shutdown, close, is_closed), unless it exists.
 * [-0, +0, m] */
void tulua__file_stream_register(lua_State *L);

/* Pushes a file stream over fd, which it never closes (closing the stream
 * ends only its reads and writes). name, a static string ("stdout"), is
 * the subject of its failures; cfile, C's stream on fd or NULL, is flushed
 * before each write so that what io.write buffered goes first. The
 * metatable must have been registered. [-0, +1, m] */
void tulua__file_stream_push(lua_State *L, int fd, const char *name,
                             FILE *cfile);

#endif
