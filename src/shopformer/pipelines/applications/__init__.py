"""Business applications on a trained run: churn, batch scoring, demand forecast, trends.

One module per application; ``snapshot`` holds what they share (histories and model state at a
cut-off time), ``export`` the Parquet / CSV writers. Explanations live in evaluation/explain.py.
"""
