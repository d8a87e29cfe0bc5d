"""onnxruntime-web in headless Chromium as a runtime: the session (session.py), the loopback server that drives the
page (driver.py), what the browser needs on this machine (toolchain.py), and the page itself (assets/)."""
