"""dpmesh_core.detect"""
