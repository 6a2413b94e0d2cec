"""
Title: Serve a model over HTTP
Description: a REST service and a web page for a trained model, queried from Python.

`pawnet serve MODEL` does the same from the command line. Here the app is created in
Python, started with uvicorn on a free port, and asked to label one photo.

    python examples/serve_a_model.py --model runs/example-transfer --photo some.jpg
"""

import argparse
import json
import socket
import threading
import time
import urllib.request

import uvicorn

import pawnet

parser = argparse.ArgumentParser(description=__doc__.split("\n")[2])
parser.add_argument("--model", default="imagenet-catdog")
parser.add_argument("--photo", required=True)
args = parser.parse_args()

with socket.socket() as sock:  # a free port on this machine
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

# Settings are one validated object; `pawnet serve --max-batch 8` is the same setting.
app = pawnet.create_app(args.model, pawnet.ServeSettings(max_batch=8, max_wait_ms=5))
server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
thread = threading.Thread(target=server.run)
thread.start()

url = f"http://127.0.0.1:{port}"
for _ in range(600):  # the model loads and warms up before /healthz says ok
    try:
        with urllib.request.urlopen(f"{url}/healthz") as response:
            if response.status == 200:
                break
    except OSError:
        time.sleep(0.1)

with open(args.photo, "rb") as f:
    request = urllib.request.Request(f"{url}/v1/predict", data=f.read(),
                                     headers={"Content-Type": "image/jpeg"})
with urllib.request.urlopen(request) as response:
    print(json.dumps(json.loads(response.read()), indent=2))
print(f"the web page was at {url}/ and the API docs at {url}/docs")
server.should_exit = True  # finishes the requests in flight, then stops
thread.join()
