"""The browser side of vitdeploy: the page and ES module that run a vitdeploy .onnx with onnxruntime-web
(assets/), what the browser needs on this machine (toolchain.py), driving a headless Chromium over loopback
(driver.py), and the static folder `vitdeploy web` writes (folder.py). runtimes/web.py is the runtime."""
