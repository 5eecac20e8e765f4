"""Test helpers for the cloud drivers' API-level tests, and the stand-ins of the clouds not
rehearsed yet (CloudStack, Aliyun: API sequences only). The rehearsed clouds' stand-ins are
part of the product, in drivers/rehearsal/.
"""
