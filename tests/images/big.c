/*
 * A 12 MiB static-PIE kernel, the size of a distribution vmlinux: 12 MiB of initialised data
 * (so the bytes are in the file, not .bss), touched in a loop. It knows nothing of the boot
 * protocol (the manifest says protocol = "none"). The manager once tried to allocate a buffer
 * the size of such a segment from its 8 MiB heap to checksum it, and died; it must load any
 * image that fits its region without allocating in proportion to it.
 *
 * Built by `cargo xtask test` with the system C compiler; see xtask/src/payloads.rs.
 */

static volatile unsigned char blob[12 << 20] = { 1 };

void _start(void)
{
	for (unsigned long i = 0;; i++)
		blob[i % sizeof(blob)]++;
}
