"""Audit: context attribution and the tamper-evident audit log.

Nothing is imported here: ``audit.log`` must stay importable with the standard library alone,
while ``audit.attribution`` may pull in torch and shap.
"""
