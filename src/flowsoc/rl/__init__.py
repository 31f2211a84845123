"""flowsoc.rl: TRQAM, QAM and their kin on the SOC core (OGBench data, training loops)."""
