/*
 * A kernel that knows nothing of the multikernel boot protocol: no SDK, no header, no console
 * ring, no status block. It is linked at a fixed address (an ET_EXEC, like many hobby kernels)
 * and just runs, counting in its own memory. The manager can only see it reach `started` (its
 * CPU checked in at the trampoline and jumped here); the manifest says `boot_protocol = false`
 * so that `started` counts as healthy.
 *
 * Built by `cargo xtask test` with the system C compiler; see xtask/src/payloads.rs.
 */

static volatile unsigned long counter;

void _start(void)
{
	for (;;)
		counter++;
}
