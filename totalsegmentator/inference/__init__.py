"""Model inference: result folder -> network + plans (``model``), the process-wide model cache (``cache``), the
in-memory sliding-window predictor (``predictor``) and device selection (``device``).

Submodules are imported explicitly (``from totalsegmentator.inference.predictor import predict_labels``) so that
importing this package stays cheap.
"""
