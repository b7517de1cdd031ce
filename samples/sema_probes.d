/* Probes of the sema sample, as a DTrace provider file: `dtrace -h` makes
 * the header with SEMA_*_ENABLED() and `dtrace -G` the object defining one
 * semaphore per probe in .probes (the usual way projects get semaphores). */
provider sema {
	probe guarded(int, long);
	probe persite(int);
	probe always(long);
};
