"""`lorabake run` in its own process, pointed at a fake Discord (the only thing patched):
python -m tests.serve_bot API_BASE GATEWAY_URL CONFIG"""
import sys

import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route

from bot.cli import main

if __name__ == "__main__":
    Route.BASE = sys.argv[1]
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(sys.argv[2])
    sys.exit(main(["run", "--config", sys.argv[3]]))
