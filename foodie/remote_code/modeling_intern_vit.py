"""OpenGVLab's file as the installed XTuner ships it (a checkpoint carries the file itself: foodie/tiny_model.py)."""
from xtuner._lite.modelings.internvl2.modeling_intern_vit import InternVisionModel  # noqa: F401
