"""What proves the product: demo, replay, bench, chaos, soak, traffic, verify.

Nothing outside ``stream_app.lab`` (except ``stream_app.cli``) imports it.
"""
