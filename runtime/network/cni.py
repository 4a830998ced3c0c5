"""One CNI plugin exec'd as the CNI spec's protocol says: CNI_COMMAND, CNI_NETNS... in the environment,
the config on stdin, the result (or an error object) on stdout."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.process import ContainerError

if TYPE_CHECKING:
    from runtime.network.attachments import Attachment

CNI_VERSION = "1.0.0"
CNI_PATHS = ("/usr/lib/cni", "/opt/cni/bin")  # Debian's containernetworking-plugins; upstream's
IFNAME = "eth0"


def exec_plugin(
    command: str, plugin: dict[str, Any], attachment: Attachment, prev: dict[str, Any] | None
) -> dict[str, Any]:
    """Run one CNI plugin as the CNI spec's protocol says: the environment, the config on stdin, the
    result (or an error object) on stdout."""
    kind = plugin["type"]
    binary = next((Path(d) / kind for d in CNI_PATHS if (Path(d) / kind).exists()), None)
    if binary is None:
        raise ContainerError(f"CNI plugin {kind} not found in {':'.join(CNI_PATHS)}:"
                             " install containernetworking-plugins")  # fmt: skip
    config = dict(plugin, prevResult=prev) if prev is not None else plugin
    env = dict(
        os.environ,
        CNI_COMMAND=command,
        CNI_CONTAINERID=attachment.container_id,
        # Not mounted after a reboot (or a failed open): DEL then releases what is outside it alone.
        CNI_NETNS=attachment.netns if os.path.ismount(attachment.netns) else "",
        CNI_IFNAME=IFNAME,
        CNI_PATH=":".join(CNI_PATHS),
    )
    proc = subprocess.run([binary], input=json.dumps(config).encode(), env=env, capture_output=True)
    try:
        answer: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        answer = {}
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()
        message = answer.get("msg") or stderr or f"exit {proc.returncode}"
        details = f" ({answer['details']})" if answer.get("details") else ""
        raise ContainerError(f"network {attachment.network}: CNI {kind} {command} failed: {message}{details}")
    return answer
