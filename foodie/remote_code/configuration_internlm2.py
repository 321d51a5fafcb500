"""OpenGVLab's file as the installed XTuner ships it (a checkpoint carries the file itself: foodie/tiny_model.py)."""
from xtuner._lite.modelings.internlm2.configuration_internlm2 import InternLM2Config  # noqa: F401
