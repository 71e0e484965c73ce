"""dpmesh_core.io"""
