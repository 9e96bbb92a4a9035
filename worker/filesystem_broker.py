"""The embedded broker (`filesystem://`, what `make run` uses): kombu's, with messages written atomically.

kombu's filesystem channel creates a message's file and only then writes it, while a consumer
polling the same folder moves away and reads any file named `<…>.<queue>.msg`. A consumer that polls
in between reads an empty message: `json.loads("")` raises inside the worker's consumer loop, which
Celery reports as an "Unrecoverable error" and the worker exits (seen in `make test`: the worker of
`make run` stopped this way after its first batch; kombu issue #1551 is the same error, still open).
The message is lost too: the writer goes on writing into a file the reader has already moved and
deleted. Here a message is written under a name no consumer takes (`….msg.part`) and then renamed
into the queue, which is atomic within one folder: a consumer sees the whole message or none.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

# What a message is called while it is written: kombu's consumers take only names whose part after
# the first dot is exactly `<queue>.msg`.
PARTIAL = ".part"


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        """Put `payload` onto `queue`, whole or not at all (kombu's own name, so FIFO order holds)."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + PARTIAL
        try:
            with open(partial, "wb") as file:
                file.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
