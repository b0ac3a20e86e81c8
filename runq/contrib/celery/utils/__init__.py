"""``celery.utils``: only what task modules commonly import (``utils.log.get_task_logger``)."""
