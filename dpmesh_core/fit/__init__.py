"""dpmesh_core.fit: key-point-driven body-model fitting (the embedded default estimator).

``KeypointFitter(body_model="anny", config=FitConfig(), device="cpu")`` implements the ``Estimator``
protocol (``estimate``), plus ``refine`` (start from a network's result) and ``smooth_sequence``
(offline temporal smoothing of a video's results; ``StreamingSmoother`` does the same while a video is
processed, with a fixed lag).
"""

from .config import FitConfig
from .fitter import KeypointFitter
from .smooth import StreamingSmoother, gaussian_smooth, smooth_params, smooth_sequence

__all__ = ["FitConfig", "KeypointFitter", "StreamingSmoother", "gaussian_smooth", "smooth_params", "smooth_sequence"]
