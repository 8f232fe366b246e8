"""Runs NHS England's Python mesh-client as an independent MESH client for the Rust tests.

usage: python mesh_client_helper.py URL MAILBOX PASSWORD SHARED_KEY receive
       python mesh_client_helper.py URL MAILBOX PASSWORD SHARED_KEY send TO WORKFLOW LOCAL_ID PAYLOAD_HEX

`receive` lists, downloads (all chunks) and acknowledges every message in MAILBOX and prints a
JSON list of {"id", "headers" (every mex-* header, lower case, without the prefix),
"payload_hex"}. `send` prints {"id"}.
"""

import json
import sys
import warnings

warnings.simplefilter("ignore")

from mesh_client import MeshClient  # noqa: E402


def main() -> None:
    url, mailbox, password, shared_key, command, *rest = sys.argv[1:]
    with MeshClient(url, mailbox, password, shared_key=shared_key.encode(), max_retries=0) as client:
        client.handshake()
        if command == "receive":
            received = []
            for message in client.iterate_all_messages():
                with message:  # acknowledges on a clean exit
                    payload = message.read() or b""
                    received.append(
                        {
                            "id": message.id(),
                            "headers": dict(message.mex_headers()),
                            "payload_hex": payload.hex(),
                        }
                    )
            print(json.dumps(received))
        elif command == "send":
            to, workflow_id, local_id, payload_hex = rest
            message_id = client.send_message(
                to, bytes.fromhex(payload_hex), workflow_id=workflow_id, local_id=local_id,
                subject="sent by mesh-client",
            )
            print(json.dumps({"id": message_id}))
        else:
            raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
