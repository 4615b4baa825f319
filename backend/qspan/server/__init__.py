"""qspan's web server: FastAPI app (REST + WebSocket) serving the dashboard in frontend/."""
