"""A model of what the Kata Containers runtime launches for a confidential guest.

From a Kata configuration TOML (the file a node has), a Kata version and a few host facts, the
model composes the kernel command line the runtime passes to QEMU ``-append`` and the launch shape
(vCPUs, ``-smp``, ``-cpu``, ``-m``, firmware, image or initrd, the confidential-guest object), so
that the measured values can be computed before the runtime ever starts a pod.

One module per runtime flavour: :mod:`builder.kata.go_runtime` (``src/runtime``, the Go shim) and
:mod:`builder.kata.runtime_rs` (``src/runtime-rs``). Each function is named after the Kata function
it models and cites the Kata file and release it was read from. :mod:`builder.kata.config` reads
and validates the TOML; :mod:`builder.kata.versions` is the table of modelled releases. Nothing is
guessed: an unknown version, or a configuration value that would change the command line or the
launch in a way the model does not know, is an error that names it. See docs/kata.md.
"""

from builder.kata.versions import KATA_RELEASES, KataRelease, resolve_release  # noqa: F401
