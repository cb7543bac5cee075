"""A simulated OpenAI-compatible LLM server standing in for vLLM/SGLang.

Used by tests, benchmarks and the router's zero-config default. The router only talks to it
over HTTP; nothing here imports from the rest of `router`.
"""

from router.sim.app import create_sim_app
from router.sim.fleet import SimFleet, SimReplica, serve_fleet_forever, start_fleet
from router.sim.settings import SimSettings

__all__ = [
    "SimFleet",
    "SimReplica",
    "SimSettings",
    "create_sim_app",
    "serve_fleet_forever",
    "start_fleet",
]
