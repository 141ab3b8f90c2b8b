"""The smallest Flask application worth a container."""

from flask import Flask

app = Flask(__name__)


@app.route("/")
@app.route("/index")
def index() -> str:
    return "Hello, World!"
