"""flowsoc.rl: TRQAM, QAM and their kin on the SOC core (OGBench data, training loops).

Needs the `rl` extra (`pip install -e '.[rl]'`).
"""

from .agents import AbstractFlowAgent as AbstractFlowAgent, BAM as BAM, QAM as QAM, TRQAM as TRQAM
from .config import AgentConfig as AgentConfig
