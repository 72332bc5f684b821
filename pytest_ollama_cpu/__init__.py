"""pytest-ollama-cpu: is my local LLM using my CPU well, and did this change make it worse?"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
