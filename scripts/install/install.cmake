# install.cmake: the shared library, `cmake --install`, tulua.pc, the CMake
# package, the man page and the Debian package (cpack -G DEB); included by
# the top-level CMakeLists.txt after libtulua and tulua are defined.
# Debian's multiarch library folder under any prefix (GNUInstallDirs picks
# it for /usr only): the .deb then installs where Debian's own libraries
# are, and /usr/local/lib/<arch> is in the linker's and pkg-config's paths too
if(CMAKE_LIBRARY_ARCHITECTURE AND EXISTS /etc/debian_version)
  set(CMAKE_INSTALL_LIBDIR lib/${CMAKE_LIBRARY_ARCHITECTURE} CACHE PATH
    "object code libraries (lib/<multiarch> on Debian)")
endif()
include(GNUInstallDirs)

# libtulua.so is libtulua.a's objects, whole, with Lua linked as the shared
# liblua5.4 (TULUA_SHARED_LUA picks it in libtulua's link interface): every
# library added to libtulua reaches the shared one by itself.
add_library(libtulua_shared SHARED ${CMAKE_CURRENT_LIST_DIR}/empty.c)
target_link_libraries(libtulua_shared PRIVATE
  "$<LINK_LIBRARY:WHOLE_ARCHIVE,libtulua>")
set_target_properties(libtulua_shared PROPERTIES OUTPUT_NAME tulua
  TULUA_SHARED_LUA ON VERSION ${PROJECT_VERSION}
  SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR})
# an undefined symbol would only show when an embedder links
target_link_options(libtulua_shared PRIVATE -Wl,--no-undefined)

# The files' contents, once: the pkg-config and CMake names of what the
# library links come from TULUA_PC_REQUIRES and TULUA_PC_LIBS.
set(TULUA_PUBLIC_PKGS lua5.4 libuv) # tulua.h includes lua.h and uv.h
set(TULUA_PRIVATE_PKGS ${TULUA_PC_REQUIRES})
list(REMOVE_ITEM TULUA_PRIVATE_PKGS ${TULUA_PUBLIC_PKGS})
list(JOIN TULUA_PUBLIC_PKGS " " TULUA_PC_REQ)
list(JOIN TULUA_PRIVATE_PKGS " " TULUA_PC_REQ_PRIVATE)
list(JOIN TULUA_PC_LIBS " " TULUA_PC_LIBS_PRIVATE)
# both files find the prefix from where they lie: --prefix may move it
file(RELATIVE_PATH TULUA_PC_UP /p/${CMAKE_INSTALL_LIBDIR}/pkgconfig /p)
file(RELATIVE_PATH TULUA_CMAKE_UP /p/${CMAKE_INSTALL_LIBDIR}/cmake/tulua /p)
string(REGEX REPLACE "/$" "" TULUA_PC_UP "${TULUA_PC_UP}")
string(REGEX REPLACE "/$" "" TULUA_CMAKE_UP "${TULUA_CMAKE_UP}")
configure_file(${CMAKE_CURRENT_LIST_DIR}/tulua.pc.in
  ${CMAKE_BINARY_DIR}/tulua.pc @ONLY)
configure_file(${CMAKE_CURRENT_LIST_DIR}/tulua-config.cmake.in
  ${CMAKE_BINARY_DIR}/tulua-config.cmake @ONLY)
include(CMakePackageConfigHelpers)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/tulua-config-version.cmake
  COMPATIBILITY SameMinorVersion)

install(TARGETS tulua RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
# the MPI transport, opened on first use from <bin>/../lib/tulua
# (bindings/mpi_load.c)
if(TARGET tulua_mpi) # a package of its own (below): it needs Open MPI
  install(TARGETS tulua_mpi LIBRARY DESTINATION lib/tulua COMPONENT mpi)
endif()
install(TARGETS libtulua libtulua_shared
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} NAMELINK_COMPONENT Unspecified)
install(FILES ${CMAKE_SOURCE_DIR}/host/tulua.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${CMAKE_BINARY_DIR}/tulua.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
install(FILES ${CMAKE_BINARY_DIR}/tulua-config.cmake
  ${CMAKE_BINARY_DIR}/tulua-config-version.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/tulua)
# gzipped as Debian installs man pages: lua-interpreter's lua.1.gz slave
# points at tulua.1.gz (postinst)
add_custom_command(OUTPUT ${CMAKE_BINARY_DIR}/tulua.1.gz
  COMMAND gzip -9n -c ${CMAKE_CURRENT_LIST_DIR}/tulua.1 > ${CMAKE_BINARY_DIR}/tulua.1.gz
  DEPENDS ${CMAKE_CURRENT_LIST_DIR}/tulua.1 VERBATIM)
add_custom_target(tulua_man ALL DEPENDS ${CMAKE_BINARY_DIR}/tulua.1.gz)
install(FILES ${CMAKE_BINARY_DIR}/tulua.1.gz
  DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
install(FILES ${CMAKE_SOURCE_DIR}/host/embedding.md ${CMAKE_SOURCE_DIR}/host/cli.md
  DESTINATION ${CMAKE_INSTALL_DOCDIR})

# ---- the Debian package: cpack -G DEB in the build folder ----
# CPack rather than a debian/ recipe: the package holds exactly what
# `cmake --install` installs (one list of files, above), the tree's top
# level stays as it is, and dpkg-shlibdeps still computes the Depends from
# what the binaries link. One package (no libtulua0/libtulua-dev split):
# the library has no other users yet.
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME tulua)
set(CPACK_PACKAGE_VENDOR "tulua")
set(CPACK_PACKAGE_CONTACT "tulua maintainers <tulua@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
  "Lua 5.4 runtime on libuv: tasks, pools, asyncio, a drop-in lua5.4")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION interpreters)
set(CPACK_DEBIAN_PACKAGE_HOMEPAGE "https://github.com/tulua/tulua")
# the dependencies are what the binaries link, as dpkg-shlibdeps finds them
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# Two packages: tulua (everything but MPI's transport) and tulua-mpi
# (tulua_mpi.so, which MPIPoolExecutor loads on first use), so that
# installing tulua does not pull Open MPI in.
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_UNSPECIFIED_PACKAGE_NAME tulua)
# the REPL dlopens libedit (host/lineedit.c): shlibdeps cannot see it
set(CPACK_DEBIAN_UNSPECIFIED_PACKAGE_DEPENDS "libedit2")
set(CPACK_DEBIAN_UNSPECIFIED_PACKAGE_SUGGESTS "lua5.4, luarocks, tulua-mpi")
set(CPACK_DEBIAN_UNSPECIFIED_PACKAGE_CONTROL_EXTRA
  ${CMAKE_CURRENT_LIST_DIR}/postinst ${CMAKE_CURRENT_LIST_DIR}/prerm)
set(CPACK_COMPONENT_UNSPECIFIED_DESCRIPTION
  "${CPACK_PACKAGE_DESCRIPTION_SUMMARY}")
set(CPACK_DEBIAN_MPI_PACKAGE_NAME tulua-mpi)
set(CPACK_DEBIAN_MPI_PACKAGE_DEPENDS "tulua (= ${PROJECT_VERSION})")
set(CPACK_COMPONENT_MPI_DESCRIPTION
  "MPIPoolExecutor's transport for tulua, over Open MPI (tulua_mpi.so)")
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
include(CPack)

# ---- tests: the install used by the examples, the package installed ----
if(TULUA_SANITIZE)
  set(TULUA_TEST_SAN "${SAN}")
  list(JOIN TULUA_TEST_SAN " " TULUA_TEST_SAN)
endif()
add_test(NAME install/prefix COMMAND sh ${CMAKE_SOURCE_DIR}/tests/install/install_test.sh)
add_test(NAME install/deb COMMAND sh ${CMAKE_SOURCE_DIR}/tests/install/deb_test.sh)
set_tests_properties(install/prefix install/deb PROPERTIES TIMEOUT 400
  ENVIRONMENT "BUILD=${CMAKE_BINARY_DIR};SRC=${CMAKE_SOURCE_DIR};CFLAGS_SAN=${TULUA_TEST_SAN}"
  RESOURCE_LOCK tulua_install)
