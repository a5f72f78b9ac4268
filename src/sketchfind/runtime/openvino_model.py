"""``OpenVinoModel``: the exported ONNX graphs (:mod:`.export`) run by OpenVINO's CPU plugin instead of ONNX Runtime.

The same graphs, the same API as :class:`~.onnx_model.OnnxModel` (it only opens other sessions), the same values
(fp32 throughout: OpenVINO would compute in bf16 on CPUs with AMX unless told otherwise). On the 2-core Xeon
(``benchmarks/results/runtime.md``) a batch-1 sketch encoding takes ~3.5 ms instead of ~4.9 ms, and a query
that follows a pause does not pay ONNX Runtime's slow wake-up. The encoders are compiled for each batch size they
meet (static shapes: the sketch encoder ~3.5 ms vs ~4.0 ms with a dynamic batch; a build meets two sizes, 32 and
its last batch), a few sizes kept; the relation head keeps its dynamic batch, whose chunks vary in size. A large
batch (indexing, evaluation) runs as micro-batches of 2 on one stream per thread (``SPLIT_FROM``, ``MICRO_BATCH``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .onnx_model import OnnxModel

STATIC = frozenset({"sketch", "photo"})  # graphs compiled per input shape (the head stays dynamic)
KEEP_SHAPES = 4  # compiled shapes kept per graph (the least recently used one goes)
# A batch of at least SPLIT_FROM images (a build's, an evaluation's) runs as micro-batches of MICRO_BATCH on one
# stream per thread, each stream on its own thread (OpenVINO's throughput mode): no thread waits for another
# at every layer. zse-lite0's photo encoder on the 2-core Xeon: 2.9 ms a photo instead of 3.6 as one batch of
# 32 on both threads, and 3.3 instead of 5.1 while another process takes 40% of a core (as a Ray build's
# decoding does; micro-batches of 4: 3.0 / 3.6, of 8: 3.1 / 4.2).
SPLIT_FROM = 4
MICRO_BATCH = 2


class _Compiled:
    """One graph behind ONNX Runtime's ``run(None, feeds)``: OpenVINO infer requests, one per compiled shape.
    Calls are serialised (an infer request runs one inference at a time) and outputs are copied out of
    OpenVINO's buffers, which the next inference reuses."""

    def __init__(self, core, path: Path, config: dict, static: bool, streams: int = 1):
        self.core, self.config, self.static = core, config, static
        self.model = core.read_model(str(path))
        self.requests: OrderedDict = OrderedDict()
        self.lock = threading.Lock()
        self.streams = streams if static else 1  # > 1: large batches run as micro-batches, one stream per thread
        self.queue = None  # the micro-batches' infer requests, compiled on the first large batch
        self._out: list[np.ndarray] = []  # the large batch being run: its outputs

    def _request(self, shapes: tuple):
        key = shapes if self.static else None
        request = self.requests.get(key)
        if request is None:
            model = self.model
            if self.static:
                model = model.clone()
                model.reshape({name: list(shape) for name, shape in shapes})
            request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
            self.requests[key] = request
            if len(self.requests) > KEEP_SHAPES:
                self.requests.popitem(last=False)
        self.requests.move_to_end(key)
        return request

    def run(self, _outputs, feeds: dict) -> list[np.ndarray]:
        with self.lock:
            if self.streams > 1 and len(feeds) == 1 and len(next(iter(feeds.values()))) >= SPLIT_FROM:
                return self._run_streams(*feeds.items())
            request = self._request(tuple((name, x.shape) for name, x in feeds.items()))
            request.infer(feeds)
            return [np.array(request.get_tensor(port).data, copy=True) for port in request.model_outputs]

    def _run_streams(self, feed: tuple[str, np.ndarray]) -> list[np.ndarray]:
        """One input's large batch as micro-batches on ``streams`` streams (the last one padded with copies of
        its last image, whose outputs are dropped); outputs in batch order."""
        import openvino as ov

        name, x = feed
        if self.queue is None:
            model = self.model.clone()
            model.reshape({name: [MICRO_BATCH, *x.shape[1:]]})
            config = {k: v for k, v in self.config.items() if k != "PERFORMANCE_HINT"} | {"NUM_STREAMS": self.streams}
            compiled = self.core.compile_model(model, "CPU", config)
            self.queue = ov.AsyncInferQueue(compiled, 2 * self.streams)  # one waiting per stream: no gaps
            self.queue.set_callback(self._collect)
        n = len(x)
        padded = -(-n // MICRO_BATCH) * MICRO_BATCH
        if padded > n:
            x = np.concatenate([x, np.repeat(x[-1:], padded - n, axis=0)])
        self._out = [
            np.empty((padded, *port.get_shape()[1:]), port.get_element_type().to_dtype())
            for port in self.queue[0].model_outputs
        ]
        for start in range(0, padded, MICRO_BATCH):
            self.queue.start_async({name: x[start : start + MICRO_BATCH]}, start)
        self.queue.wait_all()
        outputs, self._out = self._out, []
        return [out[:n] for out in outputs]

    def _collect(self, request, start: int) -> None:
        """AsyncInferQueue callback: copies one micro-batch's outputs into the whole batch's arrays."""
        for out, port in zip(self._out, request.model_outputs, strict=True):
            out[start : start + MICRO_BATCH] = request.get_tensor(port).data


class OpenVinoModel(OnnxModel):
    """The sketch encoder, photo encoder and pair head of one model on OpenVINO (CPU, fp32)."""

    runtime = "openvino"
    bf16_graphs: frozenset = frozenset()  # graphs OpenVINO computes in bf16 (the others in fp32)

    def __init__(self, model, paths: dict[str, Path], threads: int | None = None):
        super().__init__(model, paths, threads, runtime=self.runtime)

    @classmethod
    def open_sessions(cls, paths: dict[str, Path], threads: int) -> dict:
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",  # one stream: a call uses every thread
        }

        def precision(name: str) -> dict:
            # fp32 unless asked: bf16 is OpenVINO's default on AMX CPUs, fp32 gives the same values as PyTorch
            return {"INFERENCE_PRECISION_HINT": "bf16" if name in cls.bf16_graphs else "f32"}

        return {
            name: _Compiled(core, path, config | precision(name), name in STATIC, streams=threads)
            for name, path in paths.items()
        }


class OpenVinoBf16Model(OpenVinoModel):
    """:class:`OpenVinoModel` with the sketch encoder computed in bf16 (CPUs with native bf16 only: AMX or
    AVX512-BF16). A query sketch is encoded ~1.7x faster (zse-lite0 on the 2-core Xeon: ~2.6 ms instead of
    ~4.4 ms), its [Ret] within cosine 0.99 of fp32. Photos and the relation head stay fp32, so an index built
    with this runtime is the one ``openvino`` builds; rankings move a little with the query's tokens (zse-lite0,
    unseen-25 against fp32: ann top-10 overlap 0.926, mAP@all 0.7078 -> 0.7089; exhaustive 0.938; ann over
    every sketchy-mini photo 0.871; benchmarks/results/runtime.md)."""

    runtime = "openvino-bf16"
    bf16_graphs = frozenset({"sketch"})
