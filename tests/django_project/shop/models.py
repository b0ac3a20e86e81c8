from django.db import models


class Order(models.Model):
    ref = models.CharField(max_length=40, unique=True)
    status = models.CharField(max_length=20, default="new")
