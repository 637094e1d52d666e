import logging

LOGGER = "django_tasks_q"


def configure_logging(level_name: str | None) -> None:
    """Give the django_tasks_q loggers a level and, if LOGGING set none, a console handler.

    Used by runtaskworker and again in each child of the process pool, so both log alike.
    """
    logger = logging.getLogger(LOGGER)
    if level_name:
        logger.setLevel(level_name.upper())
    if logger.hasHandlers():
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    if not level_name:
        logger.setLevel(logging.INFO)


def current_level_name() -> str:
    return logging.getLevelName(logging.getLogger(LOGGER).getEffectiveLevel()).lower()
