"""The streaming side: settings, the Faust app and its topics, web views, CLI.

``stream.app`` builds the Faust app from :class:`stream.settings.Settings` at
import; the agents in ``agents/`` attach to it. Nothing in ``models/``
depends on this package.
"""
