/* lsan_keep_dso.c: a dlclose that keeps the library loaded, preloaded by
 * mpi_spec.lua's runs under the sanitizers only. Open MPI unloads its
 * components at MPI_Finalize, and LeakSanitizer then cannot name the
 * module of their allocations (its report says "<unknown module>"), so
 * that lsan_mpi.supp, which names Open MPI's libraries, could not match
 * them; kept loaded, they are named and suppressed like the rest. */
int dlclose(void *handle);

int dlclose(void *handle) {
  (void)handle;
  return 0;
}
