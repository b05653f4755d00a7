"""A trackline courier: sends its fixes, drops what the server acks, resends the rest.

    cd proto/examples && pip install -r requirements.txt
    python -m grpc_tools.protoc -I .. --python_out=. ../trackline/v1/trackline.proto
    python courier.py ws://127.0.0.1:8080 "$(trackctl token courier bike-7)" < fixes.csv

Each stdin line is `lat,lon` or `lat,lon,speed_mps`, one fix recorded a second apart.
"""
import asyncio, sys, time

import websockets
from trackline.v1 import trackline_pb2 as pb


async def flush(url, token, buffer):
    """Sends the buffer in one frame, then drops every fix an Ack covers until none is left."""
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(f"{url}/v1/courier/ws", additional_headers=headers) as ws:
        await ws.send(pb.CourierFrame(fixes=buffer).SerializeToString())
        while buffer:
            reply = pb.ServerFrame.FromString(await ws.recv())
            if reply.HasField("rejected"):
                r = reply.rejected
                print(f"fix {r.seq} refused: {r.code}: {r.reason}", file=sys.stderr)
            else:  # an Ack also covers the fixes refused before it
                buffer[:] = [fix for fix in buffer if fix.seq > reply.ack.seq]


def main():
    url, token = sys.argv[1:3]
    lines = [line.split(",") for line in sys.stdin if line.strip()]
    first_seq = time.time_ns() // 1000  # milliseconds x 1000: increases across app restarts
    now_ms = time.time_ns() // 1_000_000
    buffer = []
    for i, (lat, lon, *speed) in enumerate(lines):
        fix = pb.Fix(seq=first_seq + i, time_ms=now_ms - (len(lines) - i) * 1000,
                     lat_e7=round(float(lat) * 1e7), lon_e7=round(float(lon) * 1e7))
        if speed:  # accuracy, speed, heading: set only what the device knows; unset is unknown
            fix.speed_mps = float(speed[0])
        buffer.append(fix)
    while buffer:  # after a lost connection, reconnect and resend what is not acked
        try:
            asyncio.run(flush(url, token, buffer))
        except (OSError, websockets.ConnectionClosed) as e:
            close = getattr(e, "rcvd", None)
            if close and close.code not in (1001, 1011):  # refused, not lost: resending won't help
                sys.exit(f"closed by the server: {close.code} {close.reason}")
            print(f"connection lost ({e}), resending {len(buffer)} fixes", file=sys.stderr)
            time.sleep(1)
    print(f"all {len(lines)} fixes acked")


if __name__ == "__main__":
    main()
