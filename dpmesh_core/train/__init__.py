"""dpmesh_core.train"""
