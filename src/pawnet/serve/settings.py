"""The service's settings: one validated dataclass that `create_app`, `run` and the
`pawnet serve` flags share (`max_batch` is `--max-batch`)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from pawnet.config import check_fields, coerce_field, setting
from pawnet.data.images import MAX_PIXELS
from pawnet.errors import ConfigError
from pawnet.inference.runtimes import RUNTIMES

LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Lower than the CLI's limit: a 48 MP phone photo passes, and a request of bombs cannot
# hold gigabytes (docs/decisions.md, "Decoding within a byte budget").
SERVE_MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class ServeSettings:
    """How `pawnet serve` listens, batches, and limits what clients may send."""

    host: str = setting("127.0.0.1", "Address to listen on.")
    port: int = setting(8000, "Port to listen on.", range=(0, 65535))
    max_batch: int = setting(32, "Most images per model call; 1 turns batching off.",
                             range=(1, 4096))
    max_wait_ms: float = setting(0.0, "Longest an image waits for others to join its batch; "
                                 "0: none, a batch is what arrived while the model was "
                                 "busy.", range=(0.0, 60_000.0))
    max_upload_mb: float = setting(10.0, "Largest request body in MB; larger ones get 413 "
                                   "while still arriving.", range=(0.001, 10_000.0))
    max_files: int = setting(32, "Most images per request.", range=(1, 10_000))
    max_pixels: int = setting(SERVE_MAX_PIXELS, "Larger images are refused as possible "
                              "decompression bombs, and so are images that decode to more "
                              "bytes than an 8-bit RGB one that size (RGBA, 32-bit).",
                              range=(1, MAX_PIXELS))
    queue_size: int = setting(256, "Most images waiting for the model; beyond it requests "
                              "get 503 with Retry-After.", range=(1, 1_000_000))
    explain_queue_size: int = setting(64, "Most photos waiting for a heat-map (/v1/explain); "
                                      "beyond it requests get 503 with Retry-After.",
                                      range=(1, 1_000_000))
    timeout_s: float = setting(30.0, "Time limit per request, for the upload and for the "
                               "model; for all of a /v1/explain request, heat-maps "
                               "included.", range=(0.001, 3600.0))
    header_timeout_s: float = setting(10.0, "Time a client has to send a request's headers; "
                                      "slower connections are closed.", range=(0.1, 3600.0))
    keep_alive_s: float = setting(5.0, "How long an idle connection stays open between "
                                  "requests.", range=(0.1, 3600.0))
    max_connections: int = setting(256, "Most connections and requests at once; beyond it "
                                   "new requests get 503.", range=(1, 1_000_000))
    api_key_env: str | None = setting(None, "Environment variable holding the API key that "
                                      "every /v1/* call must send as a Bearer token.")
    cors_origins: tuple[str, ...] = setting((), "Origins whose pages may call the API, "
                                            "comma-separated, e.g. https://example.com; "
                                            "default: none (CORS off).")
    runtime: str = setting("auto", "Where the model runs: auto (the fastest installed "
                           "runtime that agrees with Keras), keras, onnx or litert.",
                           choices=RUNTIMES)
    tta: bool = setting(False, "Average each photo with its mirror image (test-time "
                        "augmentation): twice the model time.")
    min_confidence: float | None = setting(None, "Label a photo 'unsure' when its top "
                                           "probability is below this (0: never); default: "
                                           "the model's, chosen on validation photos.",
                                           range=(0.0, 1.0))
    drift_window: int = setting(200, "Answered photos watched for drift (/v1/drift, "
                                "/metrics): the last this many, their labels and OOD scores "
                                "against the validation photos'; a warning is logged when "
                                "they move beyond what validation makes plausible.",
                                range=(1, 10_000))
    log_level: str = setting("info", "Uvicorn's log level.",
                             choices=("critical", "error", "warning", "info", "debug", "trace"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # the same parsing as the flags: "80" is 80
            object.__setattr__(self, f.name, coerce_field(type(self), f.name,
                                                          getattr(self, f.name)))
        check_fields(self)
        self.api_key()

    def api_key(self) -> str | None:
        """The key clients must send, read from `api_key_env`; None when not asked for.

        Raises:
            ConfigError: the variable is named but empty or not set.
        """
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "").strip()  # as the client's key is
        if not key:
            raise ConfigError(f"--api-key-env names {self.api_key_env}, but that environment "
                              f"variable is empty or not set. Try: export {self.api_key_env}=...")
        return key

