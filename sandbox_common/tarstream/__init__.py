"""Directory trees as tar streams, both ways, never following a symlink nor leaving the root.

Used by the runtime (sandbox_runtime.fileops: GET and POST /archive/*, a workspace directory
out and in) and by the client (agentic_sandbox._transfer: upload_dir and download_dir, a
directory of this machine out and in), so the rules are the same on both ends of a transfer.
Streams are made and taken a piece at a time: `tree_stream()` (writer.py) yields a directory
as a tar stream read file by file, 1 MiB at a time; `Extractor` (extractor.py) is fed the
stream's bytes as they arrive (no IO of its own to the network, so a sync and an async caller
share it) and writes each entry as it comes into a staging directory, which staging.py moves
into place. Neither ever holds more than one chunk of file data, nor a header larger than
MAX_EXTRA_HEADER. base.py holds what all of them share (the block size, ArchiveError, and
open_subdir: a directory step that never follows a symlink).

What an extraction refuses (ArchiveError, nothing outside the root is ever touched):
absolute names, `..` components, symlinks whose target is absolute or leads out of the
root, hard links, devices, FIFOs and other special files, an entry under a symlink (every
step is opened with O_NOFOLLOW), more than `max_entries` entries or `max_bytes` bytes of
files (`too_large`: the runtime answers 413), an entry more than MAX_TREE_DEPTH directories
deep. Entries land in a hidden staging directory
inside the root first and are moved into place only once the whole stream was read and
checked, so a refused or broken stream leaves the root as it was.

Callers import from here (sandbox_common.tarstream), not from the modules inside. Nothing
in this package may import the servers or the client: both import it.
"""

from sandbox_common.tarstream.base import DIR_FLAGS, MAX_TREE_DEPTH, ArchiveError, open_subdir
from sandbox_common.tarstream.extractor import MAX_EXTRA_HEADER, Extractor, Summary, safe_parts
from sandbox_common.tarstream.writer import tree_stream

__all__ = ["DIR_FLAGS", "MAX_EXTRA_HEADER", "MAX_TREE_DEPTH", "ArchiveError", "Extractor",
           "Summary", "open_subdir", "safe_parts", "tree_stream"]
